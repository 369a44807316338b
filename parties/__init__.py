"""Command-line programs of the toolkit: party, dealer, launcher and certificate tool."""
