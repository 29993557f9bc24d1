"""The MNIST IDX files shipped with weightspace (data only; see README.md here)."""
