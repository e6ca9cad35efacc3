"""What evaluate, predict and export share: a trained run loaded with its data, and pictures made into inputs."""
