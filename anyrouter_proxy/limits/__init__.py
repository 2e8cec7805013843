"""Token buckets, credits, budgets, connection shares and the Quota protocol that the
gateway admits requests through; in this process (memory) or shared on Redis (+ lua/)."""
