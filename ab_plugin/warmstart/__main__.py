"""``python -m ab_plugin.warmstart``: the ``ab-plugin warmstart`` command on its own."""

from .command import warmstart_command

warmstart_command()
