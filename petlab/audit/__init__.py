"""The privacy audit: what each party received, tests on it, and the trust model shown.

* :mod:`petlab.audit.transcript` — records everything a party receives (in its process);
* :mod:`petlab.audit.party0_view` — records party 0's view of Beaver triples and openings;
* :mod:`petlab.audit.checks` — raw-value search, uniformity, correlation, reconstruction;
* :mod:`petlab.audit.classification` — the data-classification table in the regulator's terms.
"""
