"""Evaluation tasks. Importing this package registers every task in `tasks.base.TASKS`."""

from tasks import mtbench  # noqa: F401
