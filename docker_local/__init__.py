"""The Docker deployment, built and run here: the engine and Compose v2 (`engine.py`), images that build
with no registry (`images.py`), and one compose deployment (`deploy.py`). See docs/deployment.md."""
