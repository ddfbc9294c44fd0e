"""The privacy audit: what each party received, tests on it, and the trust model shown.

* :mod:`petlab.audit.transcript` — records everything a party receives (in its process);
* :mod:`petlab.audit.party0_view` — records party 0's view of Beaver triples and openings;
* :mod:`petlab.audit.keys` — records the keys and streams a party held, and its view of the mask;
* :mod:`petlab.audit.checks` — raw-value search, uniformity, correlation, mask reuse, plaintext openings, opened bits;
* :mod:`petlab.audit.attacks` — the audit playing a party: reconstruction from its keys, key search;
* :mod:`petlab.audit.negative_controls` — deliberately broken runs the audit must fail;
* :mod:`petlab.audit.classification` — the data-classification table in the regulator's terms.
"""
