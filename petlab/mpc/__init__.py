"""MPC training with CrypTen: each party in its own OS process.

* :mod:`petlab.mpc.disclosure` — what may be revealed, to whom (read this first);
* :mod:`petlab.mpc.party` — what one party process does;
* :mod:`petlab.mpc.launcher` — starts the party processes (and the dealer) locally;
* :mod:`petlab.mpc.tls` — the data parties' key pairs and mutual TLS on petlab's own sockets;
* :mod:`petlab.mpc.devices` — CPU/CUDA placement and CUDA communication staging.
"""

#: The phases that make up "MPC training" in every report: sharing the inputs, masking
#: the features once (petlab engine) and the SGD steps.
TRAINING_PHASES = ("share_inputs", "mask_features", "train")
