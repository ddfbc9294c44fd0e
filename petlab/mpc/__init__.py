"""MPC training with CrypTen: each party in its own OS process.

* :mod:`petlab.mpc.disclosure` — what may be revealed, to whom (read this first);
* :mod:`petlab.mpc.party` — what one party process does;
* :mod:`petlab.mpc.launcher` — starts the party processes (and the dealer) locally;
* :mod:`petlab.mpc.devices` — CPU/CUDA placement and CUDA communication staging.
"""
