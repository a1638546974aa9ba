from initscope.cli import run

run()
