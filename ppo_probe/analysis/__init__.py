"""Analysis room: pandas and pyarrow only, never torch."""
