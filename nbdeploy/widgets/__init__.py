"""What nbdeploy shows inside notebooks: progress bars of runs, the deploy card, the live
dashboard of deployments, and the static HTML report that mirrors it (``views`` holds the
HTML pieces and the CSS they share)."""
