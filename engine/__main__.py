import sys

try:
    from specengine.cli import entry
except KeyboardInterrupt:      # SIGINT while the program is still being imported
    sys.stderr.write("specengine: interrupted\n")
    sys.exit(130)

entry()
