"""Reading and writing Singularity Image Format (SIF) containers without Go tooling."""
