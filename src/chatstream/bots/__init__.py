"""Chat bots: platform adapters over the same runs (`telegram/`)."""
