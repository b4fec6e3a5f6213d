"""`classify`: uploads images to the system and prints their labels as they come."""
