"""MTL architectures and weightings: the registries (``architectures``, ``weightings``) and the methods LibMTL 1.1.5
lacks, written here from their papers (``ltb``, ``nash_mtl``, ``moco``, ``aligned_mtl``)."""
