"""`modelship router`: one HTTP entry point in front of every ModelDeployment."""
