from chatstream.cli import main

raise SystemExit(main())
