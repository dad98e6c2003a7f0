"""One patient across hospitals: a cross-reference of patient identities and the consent to compare.

In the spirit of IHE PIX/PDQ (ITI TF-1 §5, §8): each hospital keeps its own
patient identifier; :class:`.models.PatientLink` says two of them are the
same person. A link is made by importing a referred study (the receiver's
patient and the sender's) or by a referral coordinator confirming a match
suggested from name, birth date, sex and national identifier, never
silently. With the patient's consent (the referral's, or a
:class:`.models.PatientConsent` of its own), a reader of a study at the
receiving hospital gets the linked patient's relevant priors from the
granting hospital as comparison studies, through the reading task's prior
grants (``workflow.TaskPrior``); ending the consent or the referral takes
them back at once.
"""
