"""Winning accuracy back: fine-tuning with masks held, gradual schedules, SNIP and lottery
tickets, the jobs the app and CLI run, and the variants they keep."""
