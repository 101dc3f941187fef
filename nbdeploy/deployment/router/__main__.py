"""``python -m nbdeploy.deployment.router FOLDER``: run a deployment's router."""

from nbdeploy.deployment.router.proxy import main

main()
