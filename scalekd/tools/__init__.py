"""Commands built on the engine: `scalekd probe` (a head on a frozen teacher's features,
probe_teacher.py) and `scalekd cache-teacher` (a teacher's top-k over stored augmentation
draws, cache_teacher.py)."""
