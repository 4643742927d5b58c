"""What a user takes away: exports, the snippet, int8 variants, saved experiments and their
Pareto front."""
