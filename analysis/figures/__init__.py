"""PNG figures of the analyses (``paper``) and of the probes (``probes``), readable without the code."""
