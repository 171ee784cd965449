"""Evaluation tasks. Importing this package registers every task in `tasks.base.TASKS`."""

from tasks import cnndm, humaneval, mtbench  # noqa: F401
