"""The model bundle: its on-disk format (``format``), signatures (``signing``), the typed metadata
(``schema``), the table of tasks (``tasks``) and the one builder of a new bundle's metadata
(``metadata.build_metadata``). Import the submodules; this package root imports nothing, so that
it stays below everything that reads bundles."""
