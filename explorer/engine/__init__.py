"""The engine: a plan in, honest numbers out. What a model is made of (structure,
inspection), how units are scored (importance, methods), masks and surgery (pruning, blocks,
compaction), and what a pruned model costs and scores (evaluation, stages, cost, latency),
behind one workbench per subject."""
