"""The Kubeflow pipeline(s) over medti's components; ``medti pipeline compile`` writes the YAML a user uploads,
``medti pipeline run`` runs the same pipeline here with kfp.local."""
