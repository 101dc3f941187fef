"""Container images of deployed versions: ``nbdeploy image build|run``, ``%deploy ... --image``,
:func:`nbdeploy.build_image` and :func:`nbdeploy.run_image`.

Modules: :mod:`~nbdeploy.image.build` (the build), :mod:`~nbdeploy.image.context` (the
Dockerfile and build context), :mod:`~nbdeploy.image.wheelhouse` (offline dependencies),
:mod:`~nbdeploy.image.engine` (the Docker Engine API), :mod:`~nbdeploy.image.container`
(``image run``), :mod:`~nbdeploy.image.options` (the CLI's arguments). This package module
stays light: the CLI imports its options without the rest.
"""
