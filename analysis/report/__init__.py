"""The claims report: each claim of the paper (``paper``) and of the probes (``probes``) checked
against our numbers by a visible verdict rule, rendered as a table (``table``)."""
