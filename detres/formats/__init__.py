"""Annotation file formats read by more than one pipeline (the loaders in ``detres/data`` and
the scorers in ``detres/evaluation``), so that both read a file by one set of rules."""
