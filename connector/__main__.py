from connector.cli import main

if __name__ == "__main__":  # not when another process imports it
    main(prog_name="capillary-aep")
