"""``albingress demo``: the seed's scenarios, served and measured on loopback."""
