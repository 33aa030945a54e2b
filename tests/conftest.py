import os

import torch

# Two cores on the reference machines: pin torch to them so tests do not oversubscribe.
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
