from i2v_worker.cli import main

raise SystemExit(main())
