from api.serve import main

# The guard matters: Dask's LocalCluster starts worker processes with spawn,
# which re-imports this module.
if __name__ == "__main__":
    main()
