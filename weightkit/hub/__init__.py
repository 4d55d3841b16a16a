"""Hugging Face Hub transfers: resumable, checked downloads (`download`) and uploads (`push`)."""
