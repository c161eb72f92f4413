"""`python -m mezo_elastic.doctor` (also under torchrun / srun): see doctor/main.py."""

from mezo_elastic.cluster import distributed
from mezo_elastic.doctor.main import main

if __name__ == "__main__":
    distributed.exit_process(main())
