"""``python -m agent`` runs the edge-agent command."""

from agent.cli import main

raise SystemExit(main())
