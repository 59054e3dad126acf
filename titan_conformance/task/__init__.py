from titan_conformance.task.sort_letters import SortLettersTask, TaskTokenizer, Reward

__all__ = ["Reward", "SortLettersTask", "TaskTokenizer"]
