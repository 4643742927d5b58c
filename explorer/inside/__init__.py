"""Looking inside a model: activations, weight views, flips, decision paths, dynamic pruning
and saliency."""
