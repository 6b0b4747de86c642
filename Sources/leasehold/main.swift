print("leasehold")
