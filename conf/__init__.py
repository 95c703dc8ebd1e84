"""nexfort's Hydra configuration tree (shipped inside nexfort-core as ``nexfort.core.conf``)."""
