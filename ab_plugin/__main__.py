"""``python -m ab_plugin``, the ``ab-plugin`` command; what ``torchrun --nproc_per_node N -m ab_plugin ...`` runs."""

from .cli import main

if __name__ == "__main__":
    main(prog_name="ab-plugin")
