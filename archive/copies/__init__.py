"""Where each archived object is kept: storage locations, the copies in them, and their upkeep.

``locations`` builds a backend for each :class:`~archive.models.StorageLocation`
and reads an object from the fastest healthy location that has it;
``actions`` writes copies (replication, repairs), checks them (fixity) and
keeps the copy alerts; ``tasks`` runs both on a schedule.
"""
