"""``python -m nbdeploy.deployment.traffic.router FOLDER``: run a deployment's router."""

from nbdeploy.deployment.traffic.router.proxy import main
from nbdeploy.private_files import restrict_umask

restrict_umask()  # its state, request logs and A/B logs: owner-only (issue 17)
main()
