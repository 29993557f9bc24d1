"""The paper's claims, one module each: its metrics, report rows, figures and files (``family.PaperClaim``),
listed in ``pipeline.CLAIMS``."""
