"""torch -> torch stages (pruning, distillation): each takes a model and returns one with the same inputs."""
