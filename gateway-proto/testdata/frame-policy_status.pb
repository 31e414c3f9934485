BL

collection")patch base 3 is not the running version 2*base_mismatch0