"""Studies: many experiments submitted as one comparison, and the evidence read back from them."""
