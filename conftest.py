"""For the whole test run, tests and doctests alike: torch computes on one thread in the
test process.

Some tests and doctests run the private set intersection in this process, as a party
process does; SecretFlow's library then runs in a fork of it and uses OpenMP through
``libgomp.so.1``, which is torch's own copy once torch is imported. With only the
library's extension modules loaded (not its whole package), a fork of a process whose
torch had computed on two threads crashed the library in 5 of 20 runs, and in none with
one torch thread; with the whole package, as petlab loads it, in none of 20 either way.
A party process never forks so (its PSI comes before any training, and the launcher
sets ``OMP_NUM_THREADS``); with one torch thread this process does not either. See
:func:`petlab.data.psi.private_intersection`.
"""

import torch

torch.set_num_threads(1)
