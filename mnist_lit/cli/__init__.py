"""The entry of every command: one decorator around Hydra's main, and the one `resume=` expander."""
