"""Development and test tooling: embedded services (tansu broker, redis-server, object
store), the Slack Web API emulator, fault injection and the demo. Not part of the installed
product (``pip install ctrguard`` ships none of it); tests, ``make demo`` and ``make bench``
import it from the source tree."""
